// Package sqlstate is the catalogue of the SQLSTATEs pgrouter reports or
// recognises, named as PostgreSQL's errcodes.txt names them, so that every
// error a client sees carries a code defined in one place.
package sqlstate

// Codes pgrouter sends or checks.
const (
	SuccessfulCompletion         = "00000" // what a NOTICE carries, as PostgreSQL's RAISE NOTICE
	Warning                      = "01000"
	FeatureNotSupported          = "0A000"
	UnableToConnect              = "08001" // sqlclient_unable_to_establish_sqlconnection
	ConnectionFailure            = "08006"
	ProtocolViolation            = "08P01"
	NumericValueOutOfRange       = "22003"
	NullValueNotAllowed          = "22004"
	InvalidTextRepresentation    = "22P02"
	InvalidParameterValue        = "22023"
	ReadOnlyTransaction          = "25006"
	InFailedTransaction          = "25P02"
	IdleInTransactionTimeout     = "25P03"
	InvalidStatementName         = "26000"
	InvalidAuthorization         = "28000"
	InvalidPassword              = "28P01"
	InvalidSavepoint             = "3B001"
	InvalidCatalogName           = "3D000"
	SerializationFailure         = "40001"
	DeadlockDetected             = "40P01"
	InsufficientPrivilege        = "42501"
	SyntaxError                  = "42601"
	UndefinedObject              = "42704"
	DatatypeMismatch             = "42804"
	UndefinedFunction            = "42883"
	ReservedName                 = "42939"
	UndefinedTable               = "42P01"
	TooManyConnections           = "53300"
	ProgramLimitExceeded         = "54000"
	ObjectNotInPrerequisiteState = "55000"
	ObjectInUse                  = "55006"
	LockNotAvailable             = "55P03"
	QueryCanceled                = "57014"
	AdminShutdown                = "57P01"
	CannotConnectNow             = "57P03"
	IdleSessionTimeout           = "57P05"
	ConfigFileError              = "F0000"
	InternalError                = "XX000"
)
