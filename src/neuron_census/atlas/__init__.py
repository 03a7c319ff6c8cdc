"""The neuron atlas: one static HTML page per chosen neuron joining what every analysis says about it, and a
per-model index of every neuron, built from the tables and stores the pipeline already writes (no model
is loaded). Opens from disk: no server, no network, every row file a script."""
