package main

import (
	"context"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/proxy"
)

func serveCmd() *cobra.Command {
	var path, pprofAddr string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the proxy on the address in router.yaml (default 0.0.0.0:6432)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			log, err := newLogger(cfg.Log.Level, cfg.Log.Format)
			if err != nil {
				return err
			}
			defer func() { _ = log.Sync() }()
			if pprofAddr != "" {
				stop, err := startPprof(pprofAddr, log)
				if err != nil {
					return err
				}
				defer stop()
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return serve(ctx, cfg, log)
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "router.yaml", "config file")
	cmd.Flags().StringVar(&pprofAddr, "pprof", "", "serve Go's /debug/pprof on this address (for profiling; keep it on loopback)")
	return cmd
}

// serve runs a proxy until ctx ends (SIGINT or SIGTERM for the command).
func serve(ctx context.Context, cfg *config.Config, log *zap.Logger) error {
	srv, err := proxy.NewServer(cfg, log)
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- srv.ListenAndServe() }()
	select {
	case err := <-served:
		_ = srv.Close()
		return err
	case <-ctx.Done():
		log.Info("shutting down")
		_ = srv.Close()
		return <-served
	}
}
