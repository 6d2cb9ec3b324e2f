"""`resumable run`: execute a notebook or script, and start it again when its process dies.

One job a module: :mod:`.params` (papermill's parameters), :mod:`.notebook` (one attempt at a
notebook, with the cell ids and session path JupyterLab sends), :mod:`.script` (one attempt at a
script), :mod:`.restarts` (whether a death is restarted), :mod:`.report` (the JSON report, which is
also the supervisor's own state), :mod:`.supervisor` (the loop over attempts). Nothing here imports
IPython: the notebook runs in a kernel of its own.
"""
