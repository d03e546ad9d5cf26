package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/pgrouter/pgrouter/config"
	"github.com/pgrouter/pgrouter/console"
	"github.com/pgrouter/pgrouter/metrics"
	"github.com/pgrouter/pgrouter/monitor"
	"github.com/pgrouter/pgrouter/proxy"
)

func serveCmd() *cobra.Command {
	var path, pprofAddr string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the proxy on the address in router.yaml (default 0.0.0.0:6432)",
		Long: `Run the proxy. Signals: SIGHUP reloads router.yaml (as RELOAD), SIGTERM shuts down
gracefully (as SHUTDOWN: stop accepting, let transactions finish within shutdown_timeout,
tell idle clients 57P01, exit 0), SIGINT shuts down at once.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			cfg, log, err := loadWithLogger(path)
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
			sigs := make(chan os.Signal, 4)
			signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
			defer signal.Stop(sigs)
			return serve(context.Background(), sigs, cfg, log)
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "router.yaml", "config file")
	cmd.Flags().StringVar(&pprofAddr, "pprof", "", "serve Go's /debug/pprof on this address (for profiling; keep it on loopback)")
	return cmd
}

// serve runs a proxy until it shuts down: SIGTERM or the SHUTDOWN command
// (gracefully), SIGINT or the end of ctx (at once). SIGHUP reloads the
// config.
func serve(ctx context.Context, sigs <-chan os.Signal, cfg *config.Config, log *zap.Logger) error {
	proxy.Version = version
	srv, err := proxy.NewServer(cfg, log)
	if err != nil {
		return err
	}
	mon := monitor.Start(srv, log)
	defer mon.Close() // after srv has closed: its end stops the pollers' rounds
	srv.SetConsole(console.New(srv, mon))
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		_ = srv.Close()
		return fmt.Errorf("listen: %w", err)
	}
	stopMetrics, err := serveMetrics(cfg.MetricsListen, metrics.Handler(srv, mon), log)
	if err != nil {
		_ = ln.Close()
		_ = srv.Close()
		return err
	}
	defer stopMetrics()

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	shutdown := func(timeout time.Duration) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			log.Warn("shutdown", zap.Error(err))
		}
	}
	for {
		select {
		case err := <-served:
			if err != nil {
				_ = srv.Close()
				return err
			}
			served = nil // the listener closed for a shutdown: wait for it to finish
		case <-srv.Done():
			log.Info("stopped")
			return nil
		case <-ctx.Done():
			log.Info("shutting down")
			_ = srv.Close()
			ctx = context.Background() // Done is next
		case sig := <-sigs:
			switch sig {
			case syscall.SIGHUP:
				log.Info("SIGHUP: reloading the config")
				_, _ = srv.Reload() // Reload logs the outcome
			case syscall.SIGTERM:
				log.Info("SIGTERM: shutting down gracefully", zap.Duration("shutdown_timeout", srv.ShutdownTimeout()))
				go shutdown(srv.ShutdownTimeout())
			default:
				log.Info("SIGINT: shutting down now")
				_ = srv.Close()
			}
		}
	}
}

// serveMetrics serves Prometheus /metrics on addr ("" disables it).
func serveMetrics(addr string, h http.Handler, log *zap.Logger) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics_listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", zap.Error(err))
		}
	}()
	log.Info("serving /metrics", zap.String("addr", ln.Addr().String()))
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = hs.Shutdown(ctx)
		<-done
	}, nil
}
