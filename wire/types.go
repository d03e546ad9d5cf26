package wire

// Message type bytes sent by a client (frontend). Several letters mean something
// else when a server sends them, so the two directions have separate names.
const (
	Bind         byte = 'B'
	Close        byte = 'C'
	CopyData     byte = 'd'
	CopyDone     byte = 'c'
	CopyFail     byte = 'f'
	Describe     byte = 'D'
	Execute      byte = 'E'
	Flush        byte = 'H'
	FunctionCall byte = 'F'
	Parse        byte = 'P'
	Password     byte = 'p' // PasswordMessage, SASLInitialResponse, SASLResponse
	Query        byte = 'Q'
	Sync         byte = 'S'
	Terminate    byte = 'X'
)

// Message type bytes sent by a server (backend).
const (
	Authentication           byte = 'R'
	BackendKeyData           byte = 'K'
	BindComplete             byte = '2'
	CloseComplete            byte = '3'
	CommandComplete          byte = 'C'
	CopyBothResponse         byte = 'W'
	CopyInResponse           byte = 'G'
	CopyOutResponse          byte = 'H'
	DataRow                  byte = 'D'
	EmptyQueryResponse       byte = 'I'
	ErrorResponse            byte = 'E'
	FunctionCallResponse     byte = 'V'
	NegotiateProtocolVersion byte = 'v'
	NoData                   byte = 'n'
	NoticeResponse           byte = 'N'
	NotificationResponse     byte = 'A'
	ParameterDescription     byte = 't'
	ParameterStatus          byte = 'S'
	ParseComplete            byte = '1'
	PortalSuspended          byte = 's'
	ReadyForQuery            byte = 'Z'
	RowDescription           byte = 'T'
)

// Transaction status bytes carried by ReadyForQuery.
const (
	TxIdle   byte = 'I'
	TxActive byte = 'T'
	TxFailed byte = 'E'
)
