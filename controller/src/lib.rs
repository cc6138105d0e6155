//! The virtual-env controller (see issue 4).
