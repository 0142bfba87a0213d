# Helpers shared by the launchers in this folder: sourced, never run. Each launcher defines
# usage() (printed to stderr) before it calls them.

# fail_usage MESSAGE: print "error: MESSAGE" and the usage, exit 2.
fail_usage() {
    echo "error: $1" >&2
    usage
    exit 2
}

# bad_option OPTION OPTARG: the getopts cases ':' (an option without its value) and '?' (an
# unknown option), for option strings that start with ':'.
bad_option() {
    if [[ "$1" == ":" ]]; then
        fail_usage "-$2 needs a value"
    fi
    fail_usage "unknown option -$2"
}

# require_positive_integer NAME VALUE: fail_usage unless VALUE is 1, 2, ...
require_positive_integer() {
    if ! [[ "$2" =~ ^[1-9][0-9]*$ ]]; then
        fail_usage "$1 must be a positive integer, got '$2'"
    fi
}

# check_device VALUE: empty (keep the preset's device) or one of mlu, gpu, cpu, auto.
check_device() {
    case "$1" in
        "" | mlu | gpu | cpu | auto) ;;
        *) fail_usage "-d must be mlu, gpu, cpu or auto, got '$1'" ;;
    esac
}
