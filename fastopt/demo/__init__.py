"""``fastopt demo``: train a small NumPy MLP on the digits set with every rule and compare.

* :mod:`.model`: the 64-64-10 MLP, forward and backward, over one ``fastopt.flatten`` buffer.
* :mod:`.data`: scikit-learn's bundled digits, split by seed.
* :mod:`.rules`: the contestants and their learning rates (the table is there).
* :mod:`.train`: the race. :mod:`.report`: table, plot, JSON. :mod:`.cli`: the options.

Needs the ``demo`` extra: ``pip install fastopt[demo]`` (scikit-learn, matplotlib, tqdm).
"""
