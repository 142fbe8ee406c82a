//! What a request must look like before policy sees it: path normalization
//! and the request-smuggling checks (being written; see the waypoint issue).
