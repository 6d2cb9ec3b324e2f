import test_magic_widget as t

t.LOAD = (
    t.LOAD
    + """
import resumable_magic.magic as m
from resumable_magic.widget import make_widget_progress
m.ResumableMagics._make_progress = lambda self, quiet: make_widget_progress(quiet)
"""
)
