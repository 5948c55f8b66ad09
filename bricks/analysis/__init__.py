"""Metrics shared by the extractors and evaluation, independent of any one method.

- `spectrum`: effective dimensionality (participation ratio) and heavy-tail exponents (Hill alpha) of
  activation and weight spectra;
- `regimes`: piecewise power-law fits of a ranked curve (plateau / power law / fast decay);
- `controls`: random same-size neuron sets, the baseline every group statistic is compared with;
- `plots`: figures of these metrics, written to a folder the caller names.
"""
