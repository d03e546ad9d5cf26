package proxy

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/seqalloc"
)

// With a sequences section, serve checks the stride sequences of every
// shard at start and every sequences.check_interval: SHOW SHARDS (seq_ok),
// SHOW SEQUENCES and /metrics show the latest result, and a sequence that
// could hand out another shard's values is logged as an error when it is
// first seen (and again when it is fixed), not at every check.

// seqCheckTimeout bounds one check of every shard.
const seqCheckTimeout = time.Minute

// watchSequences runs the check for one generation until a reload replaces
// it or the server closes.
func (s *Server) watchSequences(gen *generation) {
	if gen.cfg.Sequences == nil {
		s.storeIfCurrent(gen, func() { s.seqReport.Store(nil) })
		return
	}
	s.repeat(gen, gen.cfg.Sequences.CheckInterval.D(), func() { s.checkSequences(gen) })
}

// repeat runs f now and then every interval (only once when interval is 0)
// until a reload replaces the generation or the server closes.
func (s *Server) repeat(gen *generation, interval time.Duration, f func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			f()
			if interval <= 0 {
				return
			}
			select {
			case <-gen.ctx.Done():
				return
			case <-s.ctx.Done():
				return
			case <-time.After(interval):
			}
		}
	}()
}

// checkSequences checks every shard of a generation now, keeps the report
// (unless a reload has replaced the generation meanwhile) and logs what
// changed since the previous one.
func (s *Server) checkSequences(gen *generation) *seqalloc.Report {
	ctx, cancel := context.WithTimeout(gen.ctx, seqCheckTimeout)
	defer cancel()
	report := seqalloc.Check(ctx, gen.shards.Clusters(), seqalloc.OptionsFrom(gen.cfg))
	s.storeIfCurrent(gen, func() {
		prev := s.seqReport.Load()
		s.seqReport.Store(report)
		logSequenceChanges(s.log, prev, report)
	})
	return report
}

// storeIfCurrent runs store, which keeps what a poll of gen found, unless a
// reload has replaced gen: a poll that outlived its generation must not
// overwrite what the new one stored (under pollMu, so the check and the
// store are one step).
func (s *Server) storeIfCurrent(gen *generation, store func()) {
	s.pollMu.Lock()
	defer s.pollMu.Unlock()
	if s.gen.Load() == gen {
		store()
	}
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

// seqOK is a shard's seq_ok: nil until a check has judged it, or when
// sequences are not managed.
func (s *Server) seqOK(cluster, shard string) any {
	r := s.seqReport.Load()
	if r == nil {
		return nil
	}
	ok, known := r.ShardOK(cluster, shard)
	if !known {
		return nil
	}
	return ok
}
