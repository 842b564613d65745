"""Pure build planning: phases, the messages that cross the durable boundary, deterministic naming."""
