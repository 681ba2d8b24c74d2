//! Many nodes: the broker carries hints of each node's commits and its
//! signals to the others (PostgreSQL LISTEN/NOTIFY or NATS), sealed so that
//! only nodes of the deployment are believed.

pub mod broker;
mod seal;
