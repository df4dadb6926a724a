"""Built-in behaviour, written as ordinary ``trylast`` plugins so any installed plugin overrides it.

Each module here holds the real code of one behaviour and its hook implementations;
``plugins.py`` registers them as ``default.<module>`` before any installed plugin. Block one with
``--plugins=-default.<module>``.
"""
