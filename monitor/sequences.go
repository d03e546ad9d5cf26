package monitor

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/seqalloc"
)

// With a sequences section, the stride sequences of every shard are checked
// at start and every sequences.check_interval: SHOW SHARDS (seq_ok), SHOW
// SEQUENCES and /metrics show the latest result, and a sequence that could
// hand out another shard's values is logged as an error when it is first
// seen (and again when it is fixed), not at every check.

// seqCheckTimeout bounds one check of every shard.
const seqCheckTimeout = time.Minute

// CheckSequences checks every shard's sequences now and keeps the report as
// the latest. It reports false, and checks nothing, when the config in force
// has no sequences section.
func (m *Monitor) CheckSequences() (*seqalloc.Report, bool) {
	r := m.currentRound()
	if r == nil || r.cfg.Sequences == nil {
		return nil, false
	}
	return m.checkSequences(r), true
}

// checkSequences checks every shard of a round now, keeps the report
// (unless a reload has replaced the round meanwhile) and logs what changed
// since the previous one.
func (m *Monitor) checkSequences(r *round) *seqalloc.Report {
	ctx, cancel := context.WithTimeout(r.ctx, seqCheckTimeout)
	defer cancel()
	report := seqalloc.Check(ctx, r.shards.Clusters(), seqalloc.OptionsFrom(r.cfg))
	m.storeIfCurrent(r, func() {
		prev := m.seqReport.Load()
		m.seqReport.Store(report)
		logSequenceChanges(m.log, prev, report)
	})
	return report
}

// logSequenceChanges logs each violation that the previous report did not
// have, and each one it had that is gone.
func logSequenceChanges(log *zap.Logger, prev, cur *seqalloc.Report) {
	type key struct{ cluster, shard, seq string }
	before := map[key]seqalloc.Verdict{}
	if prev != nil {
		for _, r := range prev.Rows {
			if r.Verdict.Violation() {
				before[key{r.Cluster, r.Shard, r.Sequence}] = r.Verdict
			}
		}
	}
	for _, r := range cur.Rows {
		k := key{r.Cluster, r.Shard, r.Sequence}
		if !r.Verdict.Violation() {
			continue
		}
		switch {
		case before[k] == r.Verdict:
		case r.Verdict == seqalloc.Unreachable:
			log.Error("cannot check the shard's sequences", zap.String("cluster", r.Cluster), zap.String("shard", r.Shard), zap.String("detail", r.Detail))
		default:
			log.Error("sequence could hand out values another shard hands out", zap.String("cluster", r.Cluster), zap.String("shard", r.Shard),
				zap.String("sequence", r.Sequence), zap.String("verdict", string(r.Verdict)), zap.String("detail", r.Detail))
		}
		delete(before, k)
	}
	for k := range before {
		if k.seq == "" {
			log.Info("the shard's sequences can be checked again", zap.String("cluster", k.cluster), zap.String("shard", k.shard))
			continue
		}
		log.Info("sequence strides safely again", zap.String("cluster", k.cluster), zap.String("shard", k.shard), zap.String("sequence", k.seq))
	}
}

// SequencesOK is a shard's seq_ok: nil until a check has judged it, or when
// sequences are not managed; otherwise whether every sequence is safe.
func (m *Monitor) SequencesOK(cluster, shard string) any {
	r := m.seqReport.Load()
	if r == nil {
		return nil
	}
	ok, known := r.ShardOK(cluster, shard)
	if !known {
		return nil
	}
	return ok
}
