"""Stage 2: PET/CT and DCE-CT onto the planning CT (SimpleITK), with QC that flags poor results."""

from isotox.registration.rigid import RegistrationSettings, RigidResult, register_rigid

__all__ = ["RegistrationSettings", "RigidResult", "register_rigid"]
