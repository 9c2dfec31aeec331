"""--npuprec-calibrate: measure a model's BF16 noise floor and write calibrated bounds into its YAML.

`floor.py` captures transformers BF16 against the FP32 reference a device run already captured (one FP32 run
serves both comparisons); `bounds.py` turns the floor into bounds (floor x factor, rounded outwards) and refuses a
device already outside them; `yaml_doc.py` rewrites only `precision.thresholds` (and adds a default `precision:`
section) of the YAML, keeping everything else as written; `session.py` ties them into one model's calibration;
`item.py` is its pytest item (`test_precision[<model>-calibrate]`); `table.py` prints floor and device side by side.
"""
