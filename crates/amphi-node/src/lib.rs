//! One amphi node as a library: the HTTP front door, the REST API and
//! events, WHIP ingest, the mixed program and its outputs, recording, and
//! cluster membership. The `amphi` binary parses its command line into a
//! [`Config`] and calls `Node::load(config)?.run()`.

mod acme;
mod admission;
mod api;
mod app;
mod audience;
mod audience_api;
mod auth;
mod body;
mod captions;
mod captions_api;
mod card_image;
mod clips;
mod cluster;
mod conn;
mod embed;
mod error;
mod events;
mod front;
mod hooks_api;
mod host;
mod listen;
mod media;
mod metrics;
mod node;
mod openapi;
mod record;
mod redirect;
mod replay;
mod scrape;
mod stats;
mod stats_api;
mod timefmt;
mod turn;
mod web;
mod webhooks;
mod whip;

pub use node::{Config, Node};
