/* The project's version, shared by the module and the executable. */
#ifndef AD_VERSION_H
#define AD_VERSION_H
#define AMQP_DELEGATE_VERSION "0.1.0"
#endif
