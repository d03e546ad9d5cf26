package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

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
			ln, err := listenClients(cfg.Listen, "listen in router.yaml", cfg.ListenReuseport)
			if err != nil {
				return err
			}
			if cfg.ListenReuseport {
				warnMigrateReq(log)
			}
			return serve(context.Background(), sigs, cfg, log, ln)
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "router.yaml", "config file")
	cmd.Flags().StringVar(&pprofAddr, "pprof", "", "serve Go's /debug/pprof on this address (for profiling; keep it on loopback)")
	return cmd
}

// listenClients opens the client port. serve and demo open it before
// anything else starts, so a port in use is the one error reported.
// With reuseport the socket is opened with SO_REUSEPORT: other processes
// that do the same (a new pgrouter starting beside a draining one) share
// the port, and the kernel spreads new connections over them.
func listenClients(addr, where string, reuseport bool) (net.Listener, error) {
	var lc net.ListenConfig
	if reuseport {
		lc.Control = setReuseport
	}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		hint := "another pgrouter or pgbouncer may be using the port: stop it, or change " + where
		if reuseport {
			hint = "a process is using the port without SO_REUSEPORT, or as another user: stop it, or change " + where
		}
		return nil, fmt.Errorf("cannot serve clients on %s: %w (%s)", addr, err, hint)
	}
	return ln, nil
}

func setReuseport(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("SO_REUSEPORT: %w", serr)
	}
	return nil
}

// migrateReqPath is Linux's switch (5.14+) that moves the connections
// queued on a closing SO_REUSEPORT socket to the others of its group;
// without it, the connections a draining pgrouter had not yet accepted when
// it closed its socket are reset.
const migrateReqPath = "/proc/sys/net/ipv4/tcp_migrate_req"

// warnMigrateReq tells the operator when a rolling restart could reset
// connections.
func warnMigrateReq(log *zap.Logger) {
	data, err := os.ReadFile(migrateReqPath)
	if err != nil || strings.TrimSpace(string(data)) != "0" {
		return
	}
	log.Warn("listen_reuseport: net.ipv4.tcp_migrate_req is 0, so connections queued on this instance when it shuts down are reset instead of moving to the instance that replaces it; set it to 1 (sysctl -w net.ipv4.tcp_migrate_req=1)")
}

// serve runs a proxy on ln until it shuts down: SIGTERM or the SHUTDOWN
// command (gracefully), SIGINT or the end of ctx (at once). SIGHUP reloads
// the config. ln is closed when serve returns.
func serve(ctx context.Context, sigs <-chan os.Signal, cfg *config.Config, log *zap.Logger, ln net.Listener) error {
	proxy.Version, _ = buildVersion()
	var metricsLn net.Listener
	if cfg.MetricsListen != "" {
		var err error
		if metricsLn, err = net.Listen("tcp", cfg.MetricsListen); err != nil {
			_ = ln.Close()
			return fmt.Errorf("cannot serve /metrics on %s: %w (change metrics_listen in router.yaml)", cfg.MetricsListen, err)
		}
	}
	srv, err := proxy.NewServer(cfg, log)
	if err != nil {
		_ = ln.Close()
		if metricsLn != nil {
			_ = metricsLn.Close()
		}
		return err
	}
	mon := monitor.Start(srv, log)
	defer mon.Close() // after srv has closed: its end stops the pollers' rounds
	srv.SetConsole(console.New(srv, mon))
	if metricsLn != nil {
		defer serveMetrics(metricsLn, metrics.Handler(srv, mon), log)()
	}

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

// serveMetrics serves Prometheus /metrics on ln until stop is called.
func serveMetrics(ln net.Listener, h http.Handler, log *zap.Logger) (stop func()) {
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
	}
}
