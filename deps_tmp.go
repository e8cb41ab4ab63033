package txcoord
import (
 _ "go.etcd.io/bbolt"
 _ "github.com/lib/pq"
 _ "github.com/jackc/pgx/v5/stdlib"
 _ "github.com/google/uuid"
 _ "go.uber.org/goleak"
 _ "github.com/spf13/cobra"
)

