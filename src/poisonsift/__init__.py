"""poisonsift: find backdoor-poisoned samples in image training sets.

Modules: :mod:`~poisonsift.data` (reading data sets), :mod:`~poisonsift.attacks`
(poisoning), :mod:`~poisonsift.models` (SmallInception), :mod:`~poisonsift.training`,
:mod:`~poisonsift.explain` (LRP, activations, point clouds), :mod:`~poisonsift.gw`
(Gromov-Wasserstein k-means), :mod:`~poisonsift.defences`, :mod:`~poisonsift.metrics`,
:mod:`~poisonsift.runs` (run directories) and :mod:`~poisonsift.cli`.
"""

__version__ = "0.1.0"
