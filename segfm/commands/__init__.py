"""segfm's subcommands: thin functions over library functions, and the LightningCLI behind fit.

Each of :mod:`.export`, :mod:`.evaluate`, :mod:`.track`, :mod:`.register` holds one typed function:
its signature is the command line, its docstring's first line the subcommand's help. It imports
the library inside its body, so ``segfm <subcommand> --help`` stays fast. :mod:`.trainer` runs
fit/validate/test/predict; :mod:`.usage` and :mod:`.run_folder` keep their failures short and
clean.
"""
