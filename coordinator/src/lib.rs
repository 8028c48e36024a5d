//! # switchyard-coordinator
//!
//! Home of the coordinator daemon (`switchyard-coordinator`: Raft node, networking, operator
//! API, migration driver) and of the operator/recovery CLI (`switchyard`). Nothing is built here
//! yet: the foundation (protocol and storage) came first, and the daemon, its network layer and
//! the CLI are the next piece of work (see ARCHITECTURE.md, "Status").
