"""The methods, one module per paper: its blocks, network builder, objective and recipe.

- :mod:`~fusionkit.methods.late`: the two-stream network (Simonyan & Zisserman 2014), ``late``.
- :mod:`~fusionkit.methods.conv_fusion`: Feichtenhofer et al. 2016, ``spatial`` and ``conv_fusion``.
- :mod:`~fusionkit.methods.cmmp`: Wang et al. 2018, ``cmmp``.
- :mod:`~fusionkit.methods.ccs`: Zhang et al. 2019, ``ccs``.
- :mod:`~fusionkit.methods.cma`: Chi et al. 2019, ``cma`` and its same-modality case ``nonlocal``.

:mod:`~fusionkit.methods.recipe` says what a method is and runs one. Importing this package
registers every method, fusion block and method schedule.
"""
from fusionkit.methods import ccs, cma, cmmp, conv_fusion, late  # noqa: F401  (register the methods)
from fusionkit.methods.recipe import (METHODS, Method, build_model, get_method, list_methods, load_run,
                                      method_options, run_method)

__all__ = ["METHODS", "Method", "build_model", "get_method", "list_methods", "load_run", "method_options",
           "run_method"]
