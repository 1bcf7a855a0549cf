#!/usr/bin/python3
"""test_reload.py again, with every tenant on the native backend (EP_TEST_BACKEND)."""

import os
import runpy
import sys

sys.dont_write_bytecode = True  # nothing written into the source tree
os.environ['EP_TEST_BACKEND'] = 'native'
runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'test_reload.py'),
               run_name='__main__')
