//! RequestAuthentication: finding, verifying and forwarding JWTs (being
//! written; see the waypoint issue).
