// Subcommand entry points. Each takes the arguments after the program name (argv[0] is the
// subcommand's name and is skipped), catches st::Error and calls st::fatal(), and returns the
// exit status (0 on success).
#pragma once

namespace st {

int cmd_prepare(int argc, char** argv);
int cmd_train(int argc, char** argv);
int cmd_eval(int argc, char** argv);
int cmd_plan(int argc, char** argv);
int cmd_export(int argc, char** argv);
int cmd_generate(int argc, char** argv);
int cmd_calibrate(int argc, char** argv);

}  // namespace st
