"""Integration-test harness for ferry: real PostgreSQL and MariaDB
primary/replica pairs and the ferry binary, on 127.0.0.1, in temp dirs.

    from harness import PgPair, MariaDBPair, Ferry, make_config, listener, cluster
    from harness import AuroraGlobalPg, PrivateHosts   # Aurora Global Database stand-in
    from harness import AuroraGlobalMySQL              # its Aurora MySQL counterpart

Everything started here is cleaned up at interpreter exit, and every wait is
bounded; see proc.py for how.
"""

from .aurora import AuroraGlobalPg
from .aurora_mysql import AuroraGlobalMySQL
from .ferry import Ferry, check, cluster, ferry_bin, listener, make_config, require_binary
from .hosts import PrivateHosts, next_address
from .mariadb import MariaDBPair, MariaDBServer
from .netcut import NetCut
from .pg import PgPair, PgServer
from .ports import free_port
from .proc import HarnessError

__all__ = ["AuroraGlobalPg", "AuroraGlobalMySQL", "Ferry", "check", "cluster", "ferry_bin", "listener", "make_config",
           "require_binary", "MariaDBPair", "MariaDBServer", "NetCut", "PrivateHosts", "next_address", "PgPair", "PgServer",
           "free_port", "HarnessError"]
