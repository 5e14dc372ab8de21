//! The application's API: carriers, listeners, the roles built on them (responder, source,
//! sink) and typed framers. Everything here drives the layers below (establishment, paths,
//! transports) and holds no protocol logic of its own.

pub(crate) mod carrier;
pub mod framer;
pub(crate) mod listener;
pub(crate) mod roles;
