package main

import (
	"fmt"
	"os"

	"github.com/pgrouter/pgrouter/config"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLogger builds the process logger: human-readable on a terminal, JSON
// lines otherwise (format "auto"), or as forced by format.
func newLogger(level, format string) (*zap.Logger, error) {
	cfg, err := loggerConfig(level, format)
	if err != nil {
		return nil, err
	}
	return cfg.Build()
}

// loggerConfig is newLogger's configuration. Neither format carries stack
// traces: every message already says where and why, and an operator reading
// "reload failed" needs the file's problem, not pgrouter's call stack.
func loggerConfig(level, format string) (zap.Config, error) {
	var lvl zapcore.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return zap.Config{}, fmt.Errorf("log level: %w", err)
	}
	if format == "auto" || format == "" {
		format = "json"
		if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			format = "console"
		}
	}
	var cfg zap.Config
	if format == "console" {
		cfg = zap.NewDevelopmentConfig()
		cfg.Development = false
		cfg.EncoderConfig.EncodeLevel = zapcore.CapitalColorLevelEncoder
	} else {
		cfg = zap.NewProductionConfig()
		cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
		cfg.Sampling = nil
	}
	cfg.DisableStacktrace = true
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	return cfg, nil
}

// loadWithLogger loads router.yaml and builds the logger it configures:
// what every long-running command starts with.
func loadWithLogger(path string) (*config.Config, *zap.Logger, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, nil, err
	}
	log, err := newLogger(cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return nil, nil, err
	}
	return cfg, log, nil
}
