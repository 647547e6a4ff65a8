//! What a run of the sharded-deployment simulator reports: its counts, or the property that
//! failed.

/// A property that did not hold.
#[derive(Clone, Debug)]
pub struct ShardViolation {
    pub property: &'static str,
    pub at_us: u64,
    pub detail: String,
}

impl std::fmt::Display for ShardViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} violated at {} us: {}",
            self.property, self.at_us, self.detail
        )
    }
}

/// What one run did.
#[derive(Clone, Debug, Default)]
pub struct ShardReport {
    pub shards: usize,
    pub admitted: usize,
    pub ended: usize,
    /// Entries taken by destination shards (first replica to apply each).
    pub forwarded: u64,
    pub acks: u64,
    pub view_changes: u64,
    pub joins: u64,
    pub requeued: u64,
    pub duplicate_completions: u64,
    /// Requests moved with their queue by the map's second version.
    pub moved: u64,
    pub forwarder_went_back: u64,
    pub forwarder_resets: u64,
    /// Pushes (a trigger's, a continuation, a forwarded one) that waited for room.
    pub blocked: u64,
    /// Shards that applied the map's second version.
    pub remapped: u64,
    /// Durable runs: the whole deployment went down; members restarted from their disks;
    /// shards that decided on a state again; counted steps a restart took back (never told
    /// to anyone).
    pub deployment_restarts: u64,
    pub restarts_from_disk: u64,
    pub decided: u64,
    pub undone: u64,
    /// Trigger processes that resumed from their journal, and the unanswered pushes they
    /// handed their member then (it pushes again those the order does not hold).
    pub trigger_resumes: u64,
    pub journal_unanswered: u64,
    pub end_us: u64,
}
