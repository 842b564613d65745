"""The Azure provider: the ComputeProvider seam over azure-mgmt-compute, -network and -resource."""
