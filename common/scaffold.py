"""SCAFFOLD's tensors on the wire, named once for both ends.

The server's control variate c travels down beside the parameters; each client answers with
the change Δc_i of its own variate beside its weights.
"""

CONTROL = "scaffold.c"
CONTROL_DELTA = "scaffold.dc"
