"""Presets: the schema, the parameter registry, registry paths.

schema.py imports the section modules that keep their own models (processors.py) and they import its helpers
(Section, live, rebuild), so schema.py is imported first, whichever module of the package is asked for."""

from engine.config import schema as schema
