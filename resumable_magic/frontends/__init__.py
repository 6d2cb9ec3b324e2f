"""The faces of the package, kept thin: the cell magics and the ``resumable`` command."""
