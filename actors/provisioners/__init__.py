"""Provisioners apply and remove an entitlement in a target system; both calls are idempotent."""

from actors.provisioners.base import Provisioner, ProvisionerError
from actors.provisioners.record import RecordProvisioner
from actors.provisioners.redis_acl import RedisAclProvisioner

__all__ = ["Provisioner", "ProvisionerError", "RecordProvisioner", "RedisAclProvisioner"]
