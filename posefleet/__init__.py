"""posefleet: real-time multi-person 2D pose estimation for many camera streams, served on Ray."""

__version__ = "0.1.0"
