package logical

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ConnectTimeout bounds every connection the side processes open.
const ConnectTimeout = 10 * time.Second

// Connect opens a control connection named application; params are extra
// startup settings (a session flag the write guards look for).
func Connect(ctx context.Context, dsn, application string, params map[string]string) (*pgx.Conn, error) {
	cc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cc.ConnectTimeout = ConnectTimeout
	cc.RuntimeParams["application_name"] = application
	for k, v := range params {
		cc.RuntimeParams[k] = v
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("connect to %s@%s:%d/%s: %w", cc.User, cc.Host, cc.Port, cc.Database, err)
	}
	return conn, nil
}

// ReplicationConn opens a walsender connection to dsn's database.
func ReplicationConn(ctx context.Context, dsn, application string) (*pgconn.PgConn, error) {
	cc, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cc.RuntimeParams["replication"] = "database"
	cc.RuntimeParams["application_name"] = application
	cc.ConnectTimeout = ConnectTimeout
	return pgconn.ConnectConfig(ctx, cc)
}
