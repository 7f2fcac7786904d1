"""Test helpers shared by several test modules: a DICOM file builder and a headless-browser driver.

Imported as ``tests.helpers.<module>`` (``tests`` is a package; pytest's ``pythonpath`` puts the
repository root on ``sys.path``).
"""
