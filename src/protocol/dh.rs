//! Diffie-Hellman in the 2048-bit MODP group of RFC 3526 (group 14).
