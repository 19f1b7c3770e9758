//! Shared pieces of the fuzz targets, so that the seed generator
//! (`examples/seeds.rs`) builds inputs of the same types the targets decode.

pub mod room;
