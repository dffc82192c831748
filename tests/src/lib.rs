//! Test fixtures shared by the end-to-end test tiers.
