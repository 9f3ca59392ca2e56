"""Communicators: the simulator and torch.distributed, counting bits from real messages."""
from .base import CommStats, Communicator
from .messages import Dense, DenseSum, Message
from .simulated import SimulatedComm

__all__ = ["CommStats", "Communicator", "Dense", "DenseSum", "Message", "SimulatedComm"]
