"""Base weights stored in fewer bits: int8 (dequantized on use) and fp8 (multiplied in fp8)."""
