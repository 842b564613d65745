"""Compute providers behind one seam (`base.ComputeProvider`): `local` and `azure`."""
