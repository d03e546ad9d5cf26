// PostgreSQL JDBC in pgrouter's driver matrix (proxy/drivers_matrix_test.go).
//
// Run as a single-file program: java -cp postgresql.jar DriverMatrix.java
// URL PREFIX N KEY_A KEY_B, where KEY_A and KEY_B belong to different shards.
// With autoCommit off, JDBC pipelines BEGIN with the first statement up to one
// Sync and, with prepareThreshold=1, uses named statements from the first
// execution. The last line printed is "count_users=<n>".
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;

public class DriverMatrix {
    static final String ADD = "select rt_add_user(?, ?)";
    static final String GET = "select email from rt_get_user(?)";

    static String email(String k) {
        return k + "@example.com";
    }

    static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    static void add(Connection c, String k) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(ADD)) {
            ps.setString(1, k);
            ps.setString(2, email(k));
            try (ResultSet rs = ps.executeQuery()) {
                check(rs.next(), "add_user returned no row");
            }
        }
    }

    static void addAndCheck(Connection c, String k) throws SQLException {
        add(c, k);
        try (PreparedStatement ps = c.prepareStatement(GET)) {
            ps.setString(1, k);
            try (ResultSet rs = ps.executeQuery()) {
                check(rs.next() && email(k).equals(rs.getString(1)), "get_user " + k);
            }
        }
    }

    static long countUsers(Connection c) throws SQLException {
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("select rt_count_users()")) {
            check(rs.next(), "count_users returned no row");
            return rs.getLong(1);
        }
    }

    public static void main(String[] args) throws Exception {
        String url = args[0], prefix = args[1], keyA = args[3], keyB = args[4];
        int n = Integer.parseInt(args[2]);
        try (Connection c = DriverManager.getConnection(url)) {
            c.setAutoCommit(true);
            for (int i = 0; i < n; i++) {
                addAndCheck(c, prefix + "a" + i);
            }
            check(countUsers(c) >= n, "count_users in autocommit");
            c.setAutoCommit(false);
            for (int i = 0; i < n; i++) {
                addAndCheck(c, prefix + "t" + i);
                c.commit();
            }
            add(c, prefix + "r0");
            c.rollback();
            try (Statement st = c.createStatement()) {
                st.execute("SET LOCAL statement_timeout = '5s'");
                st.executeQuery("select typname from pg_catalog.pg_type where oid = 25").close();
            }
            addAndCheck(c, prefix + "t" + n);
            try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SHOW statement_timeout")) {
                check(rs.next() && "5s".equals(rs.getString(1)), "SET LOCAL before the first call");
            }
            c.commit();
            check(countUsers(c) >= 2 * n + 1, "count_users in a transaction");
            c.commit();
            add(c, keyA);
            try {
                add(c, keyB);
                throw new AssertionError("a two-shard transaction was accepted");
            } catch (SQLException e) {
                check("0A000".equals(e.getSQLState()), "two-shard transaction: " + e.getSQLState() + " " + e.getMessage());
            }
            c.rollback();
            long total = countUsers(c);
            c.rollback();
            // SPLIT: a java.sql.Array parameter, each name sent to its shard
            // (a wrong one finds nothing), as the first call of a transaction
            // and in autocommit, prepared server-side from the first use
            // (prepareThreshold=1). TARGET: rt_lookup runs rt_user_impl.
            String[] splitNames = new String[6];
            for (int i = 0; i < 6; i++) {
                splitNames[i] = prefix + "a" + i;
            }
            String[] asked = java.util.Arrays.copyOf(splitNames, 7);
            asked[6] = prefix + "nobody";
            for (boolean auto : new boolean[] {false, true, true}) {
                c.setAutoCommit(auto);
                try (PreparedStatement ps = c.prepareStatement("select username from rt_get_users(?)")) {
                    ps.setArray(1, c.createArrayOf("text", asked));
                    java.util.List<String> got = new java.util.ArrayList<>();
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) {
                            got.add(rs.getString(1));
                        }
                    }
                    java.util.Collections.sort(got);
                    check(got.equals(java.util.Arrays.asList(splitNames)), "rt_get_users: " + got);
                }
                try (PreparedStatement ps = c.prepareStatement("select rt_lookup(?)")) {
                    ps.setString(1, splitNames[0]);
                    try (ResultSet rs = ps.executeQuery()) {
                        check(rs.next() && email(splitNames[0]).equals(rs.getString(1)), "rt_lookup");
                    }
                }
                if (!auto) {
                    c.commit();
                }
            }
            // A run_on all call read with setFetchSize in a transaction:
            // JDBC fetches its portal 3 rows at a time, Execute after Sync.
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement("select * from rt_list_users()")) {
                ps.setFetchSize(3);
                long rows = 0;
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        rows++;
                    }
                }
                check(rows == total, "setFetchSize(3) over rt_list_users: " + rows + " rows, count_users " + total);
            }
            c.commit();
            System.out.println("count_users=" + total);
        }
    }
}
