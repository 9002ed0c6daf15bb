//! Tools that come with the `switchyard` binary but are not the proxy:
//! [`authoring`] (`switchyard policy new | componentize | wit | bindings`)
//! and the self-contained [`demo`]. The proxy's library does not link
//! them.

pub mod authoring;
pub mod demo;
