//! Sources in other clusters (being written).
