"""DCE-CT perfusion: arterial input functions and tracer-kinetic models."""
