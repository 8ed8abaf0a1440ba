"""The built-in parts. Each module is a pluggy plugin like any third party's."""
