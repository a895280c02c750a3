"""The model families, one module each: a module registers its adapters when imported, and importing this
package imports every module in it (a new family is one new file here, nothing lists them)."""

import sys

from captum_mm.models.registry import import_modules

import_modules(sys.modules[__name__])
